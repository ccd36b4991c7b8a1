"""How a patient's score and label are made from its images (stated in every report).

Kept apart from `evaluation.scoring` so that the command line can show them in `--help`
without importing SciPy (the web app image has none).
"""

PATIENT_SCORE_RULE = (
    "patient score = MEAN of the patient's image probabilities; patient prediction = "
    "score >= the model's decision threshold"
)
PATIENT_LABEL_RULE = (
    "patient label = 1 (malignant) if ANY of the patient's images is malignant, else 0 "
    "(BreakHis: every patient has a single label; IDC: 1 if any patch is IDC-positive)"
)
