"""The memory appliance: regions, records, intents, server, forwarding, metrics, launcher."""
