"""Linear and MLP probes of hidden states, zero-shot multiple choice under a variant's own
predictive, and retrieval by cosine similarity (probe.py; the comparison report's probe table).

tasks.py     the task types (classification, multiple choice, retrieval)
plays.py     embedded tasks from the Shakespeare plays (offline, deterministic)
hub_tasks.py Hugging Face data sets and local files
features.py  features (and choice log-probabilities) from a checkpoint or a Hugging Face encoder
heads.py     logistic regression, MLP, margin-ranking scorer, retrieval metrics
evaluate.py  run the probes of a task; what the comparison reports and its random-trunk floor
"""
