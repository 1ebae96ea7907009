"""Proxied services: registrations, persistent backend channels, byte-level forwarding."""
