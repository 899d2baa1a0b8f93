"""Every task metric, one module per metric family:

- ``edit``: CTC greedy decoding and edit-distance error rates (PER, WER, CER);
- ``classification``: accuracy (KS, IC, SID, ER, LID);
- ``verification``: EER and minDCF over scored trials (SV);
- ``slot_filling``: SNIPS slot-type F1 and slot-value CER (SF);
- ``diarization``: DER (SD);
- ``qbe``: subsequence DTW scoring and MTWV (QbE).

Evaluation accumulates additive statistics, so sums over batches and ranks give exact corpus-level metrics.
"""
