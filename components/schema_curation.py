"""`CurateSchema`: the inferred schema minus the value domains of identifier features.

SchemaGen learns the set of `patient_id` (and file path, slide id) values it saw; every
new patient would then be flagged as an anomaly. Identifiers keep their type and presence
constraints but lose their domain.
"""

import os

from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import v1 as tfx
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from histopath.data import features

SCHEMA_FILE = "schema.pbtxt"


def curate_schema(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """Returns a copy of `schema` without domains on identifier features."""
    curated = schema_pb2.Schema()
    curated.CopyFrom(schema)
    dropped_domains = set()
    for feature in curated.feature:
        if feature.name in features.IDENTIFIER_FEATURES:
            if feature.WhichOneof("domain_info") == "domain":
                dropped_domains.add(feature.domain)
            feature.ClearField("domain_info")
    still_used = {f.domain for f in curated.feature if f.WhichOneof("domain_info") == "domain"}
    kept = [d for d in curated.string_domain if d.name not in dropped_domains or d.name in still_used]
    del curated.string_domain[:]
    curated.string_domain.extend(kept)
    return curated


@tfx.dsl.components.component
def CurateSchema(
    schema: tfx.dsl.components.InputArtifact[standard_artifacts.Schema],
    curated_schema: tfx.dsl.components.OutputArtifact[standard_artifacts.Schema],
) -> None:
    """Writes the curated copy of the inferred schema."""
    source = io_utils.SchemaReader().read(os.path.join(schema.uri, SCHEMA_FILE))
    io_utils.write_pbtxt_file(os.path.join(curated_schema.uri, SCHEMA_FILE), curate_schema(source))
