"""Wire API of the sample services (generated from protos/grpc_helper_samples/api; never edit by hand)."""

from grpc_helper_samples.api.echo_pb2 import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.notes_pb2 import Note, NoteKey, NoteList, NotesApiVersion, NoteStatus

__all__ = [
    "EchoApiVersion",
    "EchoRequest",
    "EchoResponse",
    "Note",
    "NoteKey",
    "NoteList",
    "NoteStatus",
    "NotesApiVersion",
]
