# The ovrsis image: the build flow (served as deployment `local`) and the CLI.
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
# The same hash-pinned lock as `make setup` (torch 2.14.1 + torchvision 0.29.1 included): nothing resolves here.
COPY requirements/main.lock requirements/main.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/main.lock
COPY pyproject.toml README.md ./
COPY taxonomy taxonomy
COPY pipeline pipeline
COPY flows flows
COPY audit audit
COPY piseg piseg
RUN pip install --no-cache-dir --no-deps --no-build-isolation .
ENTRYPOINT ["ovrsis"]
