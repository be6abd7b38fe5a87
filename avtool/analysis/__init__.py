"""Signal-level features and metrics: onsets, beats, motion, alignment scores.

Each metric module documents the reference code it reproduces, the quirks it keeps and the values it defines where
the reference fails: `av_align` (AV-Align, two versions), `beats` (beat coverage / hit, two implementations),
`bas` (Beat Alignment Score, two directions), on the optical-flow curve of `motion`; `plot` draws the alignment.
Import the functions from their modules (`from avtool.analysis.av_align import av_align`); librosa, scipy, cv2 and
matplotlib load only when a function needs them.
"""
