"""Signal-level features and metrics: onsets, beats, motion, alignment scores."""
