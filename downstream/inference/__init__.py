"""Using a finished run: ``run.load_run`` rebuilds it from its folder; ``pipeline`` runs upstream -> interface
-> head as the run's evaluation did; ``inputs`` lists, checks and batches audio; ``outputs`` writes
predictions; ``qbe`` searches queries in documents. Commands: ``python -m downstream.predict`` and
``python -m downstream.extract`` (docs/using-a-trained-run.md)."""
