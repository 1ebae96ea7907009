"""The events service and its client-side listener."""
