"""Model checkpoints: finding, fingerprinting and loading them, and what the job adds to a loaded model."""
