"""Bundled sample data (OHLCV) for tests and the offline demo."""
