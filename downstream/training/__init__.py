"""The training engine: compose a run (runner), train it (trainer, branch), and what a run needs around
the loop: checkpoints, data loading, preemption, several processes, the hidden-state cache, run logs.

Dependencies point one way: the engine imports tasks, interfaces and upstreams; nothing there imports it.
"""
