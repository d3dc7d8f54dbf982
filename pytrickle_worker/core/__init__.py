"""The bottom layer: config-free helpers every other package may use.

Nothing here imports anything of ``pytrickle_worker`` outside ``core``.
"""
