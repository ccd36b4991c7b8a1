# The pipeline image as Dataflow's SDK container (--sdk_container_image): the same
# packages and histopath code, plus the Beam SDK harness launcher that Dataflow workers
# start (/opt/apache/beam/boot), from Beam's published SDK image of the lock's Beam and
# Python versions. Kubeflow / Vertex tasks can run in it too (their command replaces the
# entrypoint). Needs Docker Hub; not built by the tests here.
#
#   docker build -f pipeline/docker/dataflow.Dockerfile \
#       --build-arg PIPELINE_IMAGE=REGISTRY/histopath/pipeline:TAG -t REGISTRY/histopath/pipeline:TAG-dataflow .
#   docker push REGISTRY/histopath/pipeline:TAG-dataflow

ARG PIPELINE_IMAGE=histopath/pipeline:latest
# apache-beam==2.59.0 in requirements/lock.txt, Python 3.11
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.59.0
FROM ${BEAM_SDK_IMAGE} AS beam
FROM ${PIPELINE_IMAGE}
COPY --from=beam /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
