"""Trickle streaming: the stream session that drives a processor, its channels and counters.

The MPEG-TS segment decoder and encoder it wires live in :mod:`pytrickle_worker.media`.
"""
