"""Cache tiers (memory, disk, Redis) and model residency."""
