"""The depth ablation (`tools/ablation.py`): does depth pretraining and depth fusion help?

plan: mixes, variants and each run's command; runner: trains and measures the runs, resumable;
measure: the scores of one run; aggregate: per-seed numbers and paired tests; report: the
markdown report and learning-curve PNG; plot: Pillow line charts.
"""
