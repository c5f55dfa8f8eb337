"""The reference ledger: verifies batches, stores each event once, acknowledges."""
