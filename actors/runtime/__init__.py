"""What every actor shares: settings, NATS bus, topology, lifecycle. No actor logic lives here."""
