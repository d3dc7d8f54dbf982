"""Trickle streaming: MPEG-TS media in and out, and the stream session that drives a processor."""
