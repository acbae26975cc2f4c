# Production image of segmentd and segmentctl.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -o /out/segmentd ./cmd/segmentd && CGO_ENABLED=0 go build -o /out/segmentctl ./cmd/segmentctl

# Static binaries need nothing else: no shell, no libc, no certificates
# (segmentd talks to Kafka and Redis in plain text on the private network).
FROM scratch
COPY --from=build /out/ /usr/local/bin/
# Not root.
USER 65532:65532
# Reachable from outside the container, as EXPOSE says (the default,
# 127.0.0.1:8080, is for a process on a developer's machine).
ENV SEGMENTD_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/segmentd"]
