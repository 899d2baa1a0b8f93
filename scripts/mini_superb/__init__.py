"""The mini-SUPERB generator (entry point: ``python scripts/make_mini_superb.py``): ``common`` (parameters,
speakers, synthesis), ``corpora`` (LibriSpeech, VoxCeleb1, IEMOCAP, FSC, ML-SUPERB), ``ks_sf``, ``sd_qbe``, ``readme``."""
