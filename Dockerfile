# spiro-deploy in a container: run it in a mounted project directory.
#   docker run --rm -v "$PWD:/project" -e SPIRO_URL -e SPIRO_TOKEN spiro-deploy myproj prod
FROM python:3.11-slim
# git for .gitcommit and --include-source git.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory '*'
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src
WORKDIR /project
ENTRYPOINT ["spiro-deploy"]
CMD ["--help"]
