# spiro-deploy in a container: run it in a mounted project directory.
#   docker build -t spiro-deploy .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/project" \
#       -e SPIRO_URL -e SPIRO_TOKEN_FILE=/project/.token spiro-deploy myproj prod
#
# Both stages start from Debian (bookworm: Python 3.11), which can be made
# from Debian's packages alone (mmdebstrap) where no image registry is
# reachable.  The build stage makes the wheel; the final image gets only
# the wheel, installed over Debian's own requests, pathspec and tqdm, so
# nothing is fetched from PyPI for it.
#
# Behind a TLS-intercepting proxy, pass its CA to pip in the build stage:
#   podman build -v "$PIP_CERT":/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt .

FROM debian:bookworm-slim AS build
# pip reads PIP_CERT from the environment; unset unless passed.
ARG PIP_CERT
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
# The build backend (setuptools>=77) comes from PyPI in an isolated env.
RUN python3 -m pip wheel --no-deps --no-cache-dir --wheel-dir /wheels /src

FROM debian:bookworm-slim
ARG VERSION=1.0.0
LABEL org.opencontainers.image.title="spiro-deploy" \
      org.opencontainers.image.description="Bundle a Salt state tree and deploy it to a SpiroFS server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://gitlab.com/saltspiro/spiro-deploy" \
      org.opencontainers.image.url="https://spirostack.com/spirofs/deploy/" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# git for .gitcommit and --include-source git; the mounted project belongs
# to someone else, so git must not refuse it as unsafe.  pip is installed,
# used and purged in one layer: purged in a later one it would still weigh
# on the image (about 240 MB).
COPY --from=build /wheels/*.whl /tmp/wheels/
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-requests python3-pathspec python3-tqdm python3-pip git ca-certificates \
    && python3 -m pip install --no-deps --no-index --no-cache-dir --break-system-packages /tmp/wheels/*.whl \
    && apt-get purge -y --auto-remove python3-pip \
    && rm -rf /var/lib/apt/lists/* /tmp/wheels \
    && git config --system --add safe.directory '*' \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin spiro \
    && spiro-deploy --version
# Not root: files written into the mounted project (--output) are not
# root's.  `--user "$(id -u):$(id -g)"` makes them the caller's.
USER spiro:spiro
WORKDIR /project
ENTRYPOINT ["spiro-deploy"]
CMD ["--help"]
