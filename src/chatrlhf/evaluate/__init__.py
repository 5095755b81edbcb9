"""Evaluation: helpfulness, truthfulness and harmlessness of several models (`run.run_eval`)."""
