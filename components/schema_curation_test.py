"""`curate_schema`: identifier features lose their value domains."""

from __future__ import annotations


def test_identifier_domains_are_removed_and_others_kept():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from histopath.components.schema_curation import curate_schema

    schema = text_format.Parse(
        """
        feature { name: "patient_id" type: BYTES domain: "patient_id" }
        feature { name: "subtype" type: BYTES domain: "subtype" }
        feature { name: "label" type: INT bool_domain {} }
        string_domain { name: "patient_id" value: "190" value: "2523" }
        string_domain { name: "subtype" value: "A" value: "F" }
        """,
        schema_pb2.Schema(),
    )
    curated = curate_schema(schema)
    by_name = {f.name: f for f in curated.feature}
    assert by_name["patient_id"].WhichOneof("domain_info") is None
    assert by_name["subtype"].domain == "subtype" and by_name["label"].HasField("bool_domain")
    assert [d.name for d in curated.string_domain] == ["subtype"]
    assert len(schema.string_domain) == 2  # the input is not modified
