"""STT actor: batched faster-whisper over a durable consumer shared by all replicas."""
