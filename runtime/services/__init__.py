"""The services built on the turn core: alarms and schedules, events and subscriptions,
steps, the lifecycle operations, promotion and sharding."""
