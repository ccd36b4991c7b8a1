"""Names and meaning of the features of one ingested record (one `tf.train.Example`).

This is the contract between ingestion (`histopath.data`), the TFX pipeline
(`histopath.components`, `histopath.pipeline`) and evaluation: every other module refers to
these constants, never to the literal strings.
"""

# --- written for every dataset ---------------------------------------------------------
IMAGE = "image"  # bytes: the encoded image exactly as stored on disk (no re-encode);
# for IDC region bags (`ingest --bag-size K`): the region mosaic, encoded losslessly as PNG
IMAGE_FORMAT = "image_format"  # bytes: "png" | "jpeg" | ... (detected from content)
LABEL = "label"  # int64: 0 benign / IDC-negative, 1 malignant / IDC-positive
PATIENT_ID = "patient_id"  # bytes: the unit of splitting and of patient-level reporting
SOURCE_PATH = "source_path"  # bytes: path of the file relative to the source folder
HEIGHT = "height"  # int64: image height in pixels
WIDTH = "width"  # int64: image width in pixels
DATASET = "dataset"  # bytes: "breakhis" | "idc"

# --- BreakHis only ---------------------------------------------------------------------
SUBTYPE = "subtype"  # bytes: tumour subtype code (A, F, PT, TA, DC, LC, MC, PC)
MAGNIFICATION = "magnification"  # int64: 40, 100, 200 or 400
SLIDE_ID = "slide_id"  # bytes: e.g. "22549AB"; patient = leading digits

# --- IDC only --------------------------------------------------------------------------
PATCH_X = "patch_x"  # int64: x offset of the patch in the patient's whole-mount slide
PATCH_Y = "patch_y"  # int64: y offset of the patch in the patient's whole-mount slide
# (for region bags, PATCH_X / PATCH_Y are the region's origin in slide pixels)

# --- IDC region bags only (`histopath ingest --dataset idc --bag-size K`, data/bags.py) --
BAG_PATCH_LABELS = "bag_patch_labels"  # int64 list, K*K: patch labels row-major, -1 = none
BAG_SIZE = "bag_size"  # int64: K, the region's edge in patches (image = K*50 px square)

# --- whole-slide tiles (`--dataset slides`, components/slide_ingest.py) ----------------
# SLIDE_ID (the slide's file name without extension), PATCH_X / PATCH_Y (the tile's
# level-0 top-left pixel) as above, and:
MPP = "mpp"  # float: microns per pixel of the tile as stored (tile_um / tile_px)

LABEL_NAMES = ("benign", "malignant")

# Features that identify a patient or a file. They must never become part of a schema's
# value domain (a new patient is not an anomaly) nor a model input.
IDENTIFIER_FEATURES = (PATIENT_ID, SOURCE_PATH, SLIDE_ID)


def patient_sort_key(patient_id: str) -> tuple[int, str]:
    """Orders patient ids as people read them: numeric ids numerically ("9" before "10")."""
    return (len(patient_id), patient_id)
