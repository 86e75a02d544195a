# Multi-stage build: compile the service, then ship it with ansible-core.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ansible-runner-service

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates openssh-client git \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/ansible \
 && /opt/ansible/bin/pip install --no-cache-dir 'ansible-core>=2.16' \
 && useradd --system --create-home --home-dir /var/lib/ansible-runner runner
ENV PATH=/opt/ansible/bin:$PATH \
    LISTEN_ADDR=0.0.0.0:50051 \
    PLAYBOOKS_DIR=/srv/playbooks
COPY --from=build /src/target/release/ansible-runner-service /usr/local/bin/ansible-runner-service
COPY playbooks /srv/playbooks
USER runner
WORKDIR /var/lib/ansible-runner
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["ansible-runner-service", "health", "--addr", "127.0.0.1:50051"]
ENTRYPOINT ["ansible-runner-service"]
CMD ["serve"]
