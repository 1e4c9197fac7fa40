"""The admin HTTP listener: metrics, health, readiness and status endpoints."""
