# One image for every role of AT·OM: the compose service's command picks it
# (`atom serve --role api|ws|engine`, `atom migrate`); alone it runs everything in one process.

# Build stage: the project as a wheel, so that the runtime image holds no sources or build tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY atom_actors ./atom_actors
COPY config/spheres.toml ./config/
COPY clients/js/src ./clients/js/src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    API_HOST=0.0.0.0 \
    API_PORT=8000 \
    WS_PORT=8001
RUN groupadd --system --gid 10001 atom \
    && useradd --system --uid 10001 --gid atom --home-dir /home/atom --create-home \
        --shell /usr/sbin/nologin atom
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
# Settings come from the environment only: no .env is read from an empty working directory.
WORKDIR /home/atom
EXPOSE 8000 8001
# Liveness of the API role. The compose file gives the other roles their own check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/v1/health' % os.environ.get('API_PORT', '8000'), timeout=2)"]
CMD ["atom", "serve"]
