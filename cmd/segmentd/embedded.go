package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/segmentd/segmentd/config"
	"github.com/segmentd/segmentd/embedded"
)

// startEmbedded starts in-process stand-ins for Kafka and Redis, each when
// cfg configures none, points cfg at them (with a dev API key when cfg has
// none) and prints what a new user needs: the addresses and the key.
func startEmbedded(cfg *config.Config, getenv func(string) string) (*embedded.Servers, error) {
	// Each of Kafka and Redis is embedded when it is not configured.
	srv, err := embedded.Start(embedded.Options{Kafka: len(cfg.KafkaBrokers) == 0, Redis: len(cfg.RedisAddrs) == 0,
		Ephemeral: cfg.EmbeddedEphemeral})
	if errors.Is(err, syscall.EADDRINUSE) && !cfg.EmbeddedEphemeral {
		return nil, &config.Error{Var: "SEGMENTD_EMBEDDED_EPHEMERAL", Value: getenv("SEGMENTD_EMBEDDED_EPHEMERAL"),
			Reason: "the embedded servers' fixed ports are taken (another segmentd running? set it to true for free ports, which this segmentd prints for segmentctl)", Err: err}
	}
	if err != nil {
		return nil, err
	}
	var inProcess []string
	if len(cfg.KafkaBrokers) == 0 {
		inProcess = append(inProcess, "Kafka")
	}
	if len(cfg.RedisAddrs) == 0 {
		inProcess = append(inProcess, "Redis")
	}
	fmt.Printf("segmentd embedded mode: in-process %s (in memory; its data is lost on exit)\n", strings.Join(inProcess, " and "))
	if len(cfg.APIKeys) == 0 {
		key, err := devKey()
		if err != nil {
			srv.Close()
			return nil, err
		}
		cfg.APIKeys = map[string]string{key: "dev"}
		// The dev key is printed on purpose: it is how a new user reaches the API.
		fmt.Printf("  dev API key (org \"dev\"): %s\n", key)
	}
	if len(cfg.KafkaBrokers) == 0 {
		cfg.KafkaBrokers = srv.KafkaBrokers()
		if strings.TrimSpace(getenv("SEGMENTD_PARTITIONS")) == "" {
			cfg.Partitions = 4 // enough to share among a few local instances
		}
		fmt.Printf("  embedded Kafka: %s\n", cfg.KafkaBrokers[0])
	}
	if len(cfg.RedisAddrs) == 0 {
		cfg.RedisAddrs = []string{srv.RedisAddr()}
		fmt.Printf("  embedded Redis: %s\n", cfg.RedisAddrs[0])
	}
	if cfg.EmbeddedEphemeral {
		// Not the ports segmentctl looks at by default: say how to reach them.
		fmt.Printf("  for segmentctl: export SEGMENTD_KAFKA_BROKERS=%s SEGMENTD_REDIS_ADDRS=%s\n",
			strings.Join(cfg.KafkaBrokers, ","), strings.Join(cfg.RedisAddrs, ","))
	}
	return srv, nil
}

// devKey makes a random development API key.
func devKey() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("dev key: %w", err)
	}
	return "sk_dev_" + hex.EncodeToString(b), nil
}

// halfEmbedded returns the variable left unset when exactly one of Kafka
// and Redis is configured, and "" when both are, or neither.
func halfEmbedded(cfg config.Config) string {
	switch kafka, redis := len(cfg.KafkaBrokers) > 0, len(cfg.RedisAddrs) > 0; {
	case kafka && !redis:
		return "SEGMENTD_REDIS_ADDRS"
	case redis && !kafka:
		return "SEGMENTD_KAFKA_BROKERS"
	}
	return ""
}
