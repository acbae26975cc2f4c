# Production image of segmentd and segmentctl.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -o /out/segmentd ./cmd/segmentd && CGO_ENABLED=0 go build -o /out/segmentctl ./cmd/segmentctl

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/ /usr/local/bin/
USER nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/segmentd"]
