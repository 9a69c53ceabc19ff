"""Memory, placement, load scheduling and tenant quotas."""
