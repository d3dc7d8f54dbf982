"""The media layer, the bottom of the frame path.

PyAV decode and encode, the NVDEC choice, the MPEG-TS segment codec, JPEG. It imports no
``streaming``, ``ingest``, ``api``, ``cms`` or ``server`` code.
"""
