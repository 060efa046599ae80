# rerankrt serve on CPU: a multi-stage build (build tools stay in the first stage), a non-root user,
# the model directory mounted at /models/model (default) or baked in with `--target baked`.
#
#   docker build -t rerankrt .                                        # runtime only (~onnxruntime + OpenVINO)
#   docker run --rm -p 8080:8080 -v /path/to/artifact:/models/model:ro rerankrt
#   docker build -t rerankrt-17m --target baked --build-arg MODEL=artifacts/ettin-17m .   # model inside
#
# The image holds the serve-time engine only: no torch, transformers or sentence-transformers (export
# artifacts with `rerankrt export` outside, or in a separate image with the [export] extra).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY export ./export
RUN python -m venv /opt/rerankrt \
 && /opt/rerankrt/bin/pip install ".[serve,openvino]"

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --system --uid 10001 --create-home --home-dir /home/rerankrt rerankrt \
 && mkdir -p /models && chown rerankrt /models
COPY --from=build /opt/rerankrt /opt/rerankrt
ENV PATH=/opt/rerankrt/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RERANKRT_CACHE=/home/rerankrt/.cache/rerankrt
USER 10001
EXPOSE 8080
# /live: the process and its event loop answer; Kubernetes should use /live and /ready as probes
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/live', timeout=2).status != 200)"
ENTRYPOINT ["rerankrt", "serve"]
CMD ["/models/model", "--host", "0.0.0.0", "--port", "8080"]

# The same image with an exported artifact directory copied in (build context path in MODEL).
FROM runtime AS baked
ARG MODEL=model
COPY --chown=10001 ${MODEL} /models/model
