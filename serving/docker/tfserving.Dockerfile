# syntax=docker/dockerfile:1
# TF Serving with one pushed histopath model baked in: the reproducible version of
#   docker run -d --name serving_base tensorflow/serving
#   docker cp <serving_dir>/<model_name> serving_base:/models/<model_name>
#   docker commit --change "ENV MODEL_NAME <model_name>" serving_base <image>
#
# The BUILD CONTEXT IS NOT THE REPOSITORY but a folder holding `<model_name>/<version>/`
# (a pushed SavedModel, see components/export.py). The wrapper prepares such a context
# with one chosen version and builds:
#   serving/docker/build-tfserving-image.sh --serving-dir out/serving --model-name histopath \
#       --tag histopath/tfserving:latest
# or by hand, with a serving dir as the context:
#   docker build -f serving/docker/tfserving.Dockerfile --build-arg MODEL_NAME=histopath \
#       -t histopath/tfserving:latest out/serving
# Run:
#   docker run --rm -p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501 histopath/tfserving:latest
#   (TF Serving listens on every interface of its container and has no flag to change it:
#   publish its ports on loopback, or reach it only through a private network)
#   curl localhost:8501/v1/models/histopath          # model status
#   curl -d '{"instances": [{"b64": "..."}]}' localhost:8501/v1/models/histopath:predict
#
# NOT BUILT ON THE PROJECT'S BUILD MACHINE: it has no registry access, hence no
# tensorflow/serving base image. tests/test_dockerfiles.py checks this file statically and
# scripts/docker-smoke.sh checks only the model-baking layout, with a stand-in base image.

ARG TF_SERVING_IMAGE=tensorflow/serving:2.16.1
FROM ${TF_SERVING_IMAGE}
# The TF Serving model name: REST paths are /v1/models/<MODEL_NAME>.
ARG MODEL_NAME=histopath
LABEL org.opencontainers.image.title="histopath-tfserving" \
      org.opencontainers.image.description="TensorFlow Serving with a baked-in histopath SavedModel"
# <context>/<model_name>/<version>/saved_model.pb -> /models/<model_name>/<version>/
COPY ${MODEL_NAME}/ /models/${MODEL_NAME}/
# The stock entrypoint (tf_serving_entrypoint.sh) serves ${MODEL_BASE_PATH}/${MODEL_NAME}.
ENV MODEL_NAME=${MODEL_NAME} \
    MODEL_BASE_PATH=/models
# Serve as `nobody`: the model files only need to be readable.
USER 65534:65534
# 8500 gRPC (tensorflow_serving.apis PredictionService), 8501 REST.
EXPOSE 8500 8501
# No HEALTHCHECK: the stock image has neither curl nor python. Orchestrators probe
# GET :8501/v1/models/${MODEL_NAME} instead (see serving/k8s/tfserving.yaml).
