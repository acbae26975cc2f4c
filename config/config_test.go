package config

import (
	"errors"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaults(t *testing.T) {
	c, err := Load(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "127.0.0.1:8080" || c.ProfileTopic != "profile-events" || c.MembershipTopic != "segment-membership" ||
		c.DLQTopic != "profile-events-dlq" || c.GroupID != "segmentd" || !c.Embedded() || c.BatchWait != time.Millisecond {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestLoadExternal(t *testing.T) {
	c, err := Load(envOf(map[string]string{
		"SEGMENTD_KAFKA_BROKERS":  "127.0.0.1:9092, 127.0.0.2:9092",
		"SEGMENTD_REDIS_ADDRS":    "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
		"SEGMENTD_API_KEYS":       "acme:sk_acme_0123456789abcdef, globex : sk_globex_0123456789ab",
		"SEGMENTD_REDIS_USERNAME": "segmentd",
		"SEGMENTD_REDIS_PASSWORD": " pass word ",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Embedded() || len(c.KafkaBrokers) != 2 || len(c.RedisAddrs) != 3 || c.APIKeys["sk_acme_0123456789abcdef"] != "acme" ||
		c.APIKeys["sk_globex_0123456789ab"] != "globex" || c.RedisUsername != "segmentd" || c.RedisPassword != " pass word " {
		t.Fatalf("got %+v", c)
	}
}

func TestLoadErrors(t *testing.T) {
	base := map[string]string{
		"SEGMENTD_KAFKA_BROKERS": "127.0.0.1:9092",
		"SEGMENTD_REDIS_ADDRS":   "127.0.0.1:6379",
		"SEGMENTD_API_KEYS":      "acme:sk_acme_0123456789abcdef",
	}
	tests := map[string]struct {
		name, value string
		wantVar     string
	}{
		"http addr without port":   {"SEGMENTD_HTTP_ADDR", "localhost", "SEGMENTD_HTTP_ADDR"},
		"http addr bad port":       {"SEGMENTD_HTTP_ADDR", "127.0.0.1:abc", "SEGMENTD_HTTP_ADDR"},
		"http addr port too high":  {"SEGMENTD_HTTP_ADDR", ":99999", "SEGMENTD_HTTP_ADDR"},
		"http addr empty port":     {"SEGMENTD_HTTP_ADDR", "127.0.0.1:", "SEGMENTD_HTTP_ADDR"},
		"broker without port":      {"SEGMENTD_KAFKA_BROKERS", "kafka", "SEGMENTD_KAFKA_BROKERS"},
		"redis bad port":           {"SEGMENTD_REDIS_ADDRS", "127.0.0.1:99999", "SEGMENTD_REDIS_ADDRS"},
		"topic with space":         {"SEGMENTD_PROFILE_TOPIC", "my topic", "SEGMENTD_PROFILE_TOPIC"},
		"same topics":              {"SEGMENTD_MEMBERSHIP_TOPIC", "profile-events", "SEGMENTD_MEMBERSHIP_TOPIC"},
		"DLQ as the profile topic": {"SEGMENTD_DLQ_TOPIC", "profile-events", "SEGMENTD_DLQ_TOPIC"},
		"DLQ as the membership":    {"SEGMENTD_DLQ_TOPIC", "segment-membership", "SEGMENTD_DLQ_TOPIC"},
		"key pair without colon":   {"SEGMENTD_API_KEYS", "acme", "SEGMENTD_API_KEYS"},
		"short key":                {"SEGMENTD_API_KEYS", "acme:short", "SEGMENTD_API_KEYS"},
		"org with brace":           {"SEGMENTD_API_KEYS", "ac}me:sk_acme_0123456789abcdef", "SEGMENTD_API_KEYS"},
		"key and org swapped":      {"SEGMENTD_API_KEYS", "sk+acme/0123456789abcdef==:acme", "SEGMENTD_API_KEYS"},
		"keys missing in external": {"SEGMENTD_API_KEYS", "", "SEGMENTD_API_KEYS"},
		// One pair per line (a YAML block scalar) reads as one pair whose
		// key holds a newline: no Authorization header can carry it.
		"pairs on lines": {"SEGMENTD_API_KEYS", "acme:sk_acme_0123456789abcdef\nglobex:sk_globex_0123456789ab", "SEGMENTD_API_KEYS"},
		// Pairs separated by something other than a comma read as one pair
		// whose key holds the next pair: that organisation would have no key.
		"pairs separated by semicolons": {"SEGMENTD_API_KEYS", "acme:sk_acme_0123456789abcdef;globex:sk_globex_0123456789ab", "SEGMENTD_API_KEYS"},
		"pairs separated by spaces":     {"SEGMENTD_API_KEYS", "acme:sk_acme_0123456789abcdef globex:sk_globex_0123456789ab", "SEGMENTD_API_KEYS"},
		// Credentials in a URL are refused, and not echoed.
		"redis URL with password": {"SEGMENTD_REDIS_ADDRS", "redis://:0123456789abcdef@127.0.0.1:6379", "SEGMENTD_REDIS_ADDRS"},
		"redis user, no password": {"SEGMENTD_REDIS_USERNAME", "segmentd", "SEGMENTD_REDIS_USERNAME"},
		"batch size zero":         {"SEGMENTD_BATCH_SIZE", "0", "SEGMENTD_BATCH_SIZE"},
		"batch wait not duration": {"SEGMENTD_BATCH_WAIT", "soon", "SEGMENTD_BATCH_WAIT"},
		"batch wait of an hour":   {"SEGMENTD_BATCH_WAIT", "1h", "SEGMENTD_BATCH_WAIT"},
		"shutdown timeout of 1ns": {"SEGMENTD_SHUTDOWN_TIMEOUT", "1ns", "SEGMENTD_SHUTDOWN_TIMEOUT"},
		"estimates every 10ms":    {"SEGMENTD_ESTIMATE_INTERVAL", "10ms", "SEGMENTD_ESTIMATE_INTERVAL"},
		"negative user cache":     {"SEGMENTD_USER_CACHE_MB", "-1", "SEGMENTD_USER_CACHE_MB"},
		"ephemeral not a boolean": {"SEGMENTD_EMBEDDED_EPHEMERAL", "yes", "SEGMENTD_EMBEDDED_EPHEMERAL"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			m := map[string]string{}
			for k, v := range base {
				m[k] = v
			}
			m[tt.name] = tt.value
			_, err := Load(envOf(m))
			var ce *Error
			if !errors.As(err, &ce) || ce.Var != tt.wantVar {
				t.Fatalf("err = %v, want a config error naming %s", err, tt.wantVar)
			}
			if strings.Contains(err.Error(), "0123456789abcdef") {
				t.Fatalf("error leaks a key or password: %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

// TestAPIKeyLengthInCharacters holds SEGMENTD_API_KEYS to what the README
// and segmentd -h say: keys of 16 characters or more, printable. A key of 8
// two-byte characters is 16 bytes but 8 characters, and a key holding a
// non-ASCII control character or line break (U+0085, U+2028) or bytes that
// are not UTF-8 is not printable: each must stop start-up.
func TestAPIKeyLengthInCharacters(t *testing.T) {
	for name, key := range map[string]string{
		"8 two-byte characters": "éééééééé",
		"next line (U+0085)":    "sk_acme_01234567\u008589abcdef",
		"line separator":        "sk_acme_01234567\u202889abcdef",
		"not UTF-8":             "sk_acme_01234567\xff89abcdef",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(envOf(map[string]string{"SEGMENTD_API_KEYS": "acme:" + key}))
			var ce *Error
			if !errors.As(err, &ce) || ce.Var != "SEGMENTD_API_KEYS" {
				t.Fatalf("key %q: err = %v, want a config error naming SEGMENTD_API_KEYS", key, err)
			}
		})
	}
	if _, err := Load(envOf(map[string]string{"SEGMENTD_API_KEYS": "acme:éééééééééééééééé"})); err != nil {
		t.Fatalf("a key of 16 printable characters: %v", err)
	}
}

func TestLoadClientNeedsNoKeys(t *testing.T) {
	if _, err := LoadClient(envOf(map[string]string{"SEGMENTD_KAFKA_BROKERS": "127.0.0.1:9092", "SEGMENTD_REDIS_ADDRS": "127.0.0.1:6379"})); err != nil {
		t.Fatal(err)
	}
}

// TestDockerCompose checks that docker-compose.yml parses, has the three
// services, and wires segmentd with variables this package knows, pointing
// at the compose services.
func TestDockerCompose(t *testing.T) {
	b, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Environment map[string]string `yaml:"environment"`
			DependsOn   map[string]any    `yaml:"depends_on"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	var names []string
	for n := range doc.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "kafka,redis,segmentd" {
		t.Fatalf("services = %v", names)
	}
	if !strings.HasPrefix(doc.Services["kafka"].Image, "apache/kafka:4") {
		t.Errorf("kafka image %q is not Apache Kafka 4.x", doc.Services["kafka"].Image)
	}
	if doc.Services["kafka"].Environment["KAFKA_PROCESS_ROLES"] != "broker,controller" {
		t.Errorf("kafka is not in KRaft combined mode")
	}
	sd := doc.Services["segmentd"]
	if sd.Build == nil {
		t.Errorf("segmentd is not built from the repository's Dockerfile")
	}
	if _, err := os.Stat("../Dockerfile"); err != nil {
		t.Errorf("Dockerfile: %v", err)
	}
	known := map[string]bool{}
	for _, v := range Vars {
		known[v.Name] = true
	}
	for k := range sd.Environment {
		if !known[k] {
			t.Errorf("segmentd environment sets %s, which config does not read", k)
		}
	}
	// As docker compose expands them with nothing set in the shell:
	// ${NAME:-default} is its default.
	env := map[string]string{}
	for k, v := range sd.Environment {
		env[k] = os.Expand(v, func(ref string) string {
			_, def, _ := strings.Cut(ref, ":-")
			return def
		})
	}
	c, err := Load(envOf(env))
	if err != nil {
		t.Fatalf("compose environment does not load: %v", err)
	}
	if c.KafkaBrokers[0] != "kafka:9092" || c.RedisAddrs[0] != "redis:6379" {
		t.Errorf("segmentd is not wired to the compose services: %v %v", c.KafkaBrokers, c.RedisAddrs)
	}
	// The broker must advertise the address segmentd dials, or every
	// client is sent to an address it cannot reach.
	if adv := doc.Services["kafka"].Environment["KAFKA_ADVERTISED_LISTENERS"]; !strings.Contains(adv, "://"+c.KafkaBrokers[0]) {
		t.Errorf("kafka advertises %q, not %s", adv, c.KafkaBrokers[0])
	}
	// The image builds with the Go that go.mod asks for.
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(gomod), "\n") {
		if v, ok := strings.CutPrefix(line, "go "); ok && !strings.Contains(string(dockerfile), "FROM golang:"+strings.TrimSpace(v)+" ") {
			t.Errorf("Dockerfile does not build FROM golang:%s, the go of go.mod", strings.TrimSpace(v))
		}
	}
	for _, dep := range []string{"kafka", "redis"} {
		if _, ok := sd.DependsOn[dep]; !ok {
			t.Errorf("segmentd does not depend on %s", dep)
		}
	}
}

// TestTopicsThatCollide: Kafka refuses a topic whose name differs from
// another's only by '.' against '_'; start-up says so, naming the variable.
func TestTopicsThatCollide(t *testing.T) {
	for name, tt := range map[string]struct {
		profile, membership string
		collide             bool
	}{
		"dot and underscore": {"events.x", "events_x", true},
		"underscore and dot": {"events_x", "events.x", true},
		"dot and hyphen":     {"events.x", "events-x", false},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(envOf(map[string]string{"SEGMENTD_PROFILE_TOPIC": tt.profile, "SEGMENTD_MEMBERSHIP_TOPIC": tt.membership}))
			var ce *Error
			if got := errors.As(err, &ce) && ce.Var == "SEGMENTD_MEMBERSHIP_TOPIC"; got != tt.collide || (!tt.collide && err != nil) {
				t.Errorf("err = %v, want a collision %v", err, tt.collide)
			}
		})
	}
}
