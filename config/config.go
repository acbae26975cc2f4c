// Package config owns segmentd's configuration: the SEGMENTD_* environment
// variables of the contract, parsed and validated once at start-up.
package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Config is segmentd's validated configuration.
type Config struct {
	// HTTPAddr is the API listen address.
	HTTPAddr string
	// KafkaBrokers lists the brokers; empty means the embedded in-process broker.
	KafkaBrokers []string
	// RedisAddrs lists Redis nodes: one is standalone, several are a Redis Cluster;
	// empty means the embedded in-process Redis.
	RedisAddrs []string
	// RedisUsername is the Redis ACL user RedisPassword authenticates;
	// empty: the default user.
	RedisUsername string
	// RedisPassword authenticates to Redis (AUTH); empty: no AUTH.
	RedisPassword string
	// ProfileTopic is the input topic of profile events (default
	// "profile-events").
	ProfileTopic string
	// MembershipTopic is the output topic of membership change events
	// (default "segment-membership").
	MembershipTopic string
	// DLQTopic is the dead-letter topic of undecodable or invalid input
	// (default "profile-events-dlq").
	DLQTopic string
	// GroupID is the Kafka consumer group the instances share (default
	// "segmentd").
	GroupID string
	// APIKeys maps API keys to organisation ids. Empty in embedded mode means
	// one development key is generated and printed at start.
	APIKeys map[string]string
	// BatchSize is the most profile events processed in one batch.
	BatchSize int
	// BatchWait is how long a batch waits to fill before it is processed.
	BatchWait time.Duration
	// UserCacheMB is the memory, in MiB, the processor may take to keep
	// users' states; 0 keeps none.
	UserCacheMB int
	// EstimateInterval is how often estimatedSize is refreshed.
	EstimateInterval time.Duration
	// ShutdownTimeout bounds the orderly shutdown.
	ShutdownTimeout time.Duration
	// Partitions is the partition count used when segmentd creates its topics.
	Partitions int
	// EmbeddedEphemeral puts the embedded Kafka and Redis on free ports
	// instead of the fixed ones segmentctl finds.
	EmbeddedEphemeral bool
}

// Embedded reports whether segmentd runs an in-process Kafka or Redis: each
// of them when it is not configured.
func (c Config) Embedded() bool { return len(c.KafkaBrokers) == 0 || len(c.RedisAddrs) == 0 }

// Var describes one configuration variable.
type Var struct {
	// Name is the environment variable, such as "SEGMENTD_HTTP_ADDR".
	Name string
	// Default is the value used when the variable is unset or blank, empty
	// for none.
	Default string
	// Usage says in a few words what the variable sets, for segmentd's
	// usage message.
	Usage string
}

// Vars lists every variable segmentd reads, in the order of the contract.
var Vars = []Var{
	{"SEGMENTD_HTTP_ADDR", "127.0.0.1:8080", "API listen address"},
	{"SEGMENTD_KAFKA_BROKERS", "", "comma-separated brokers; empty: embedded in-process broker"},
	{"SEGMENTD_REDIS_ADDRS", "", "comma-separated; one = standalone, several = Redis Cluster; empty: embedded in-process Redis"},
	{"SEGMENTD_REDIS_USERNAME", "", "Redis ACL user; empty: the default user"},
	{"SEGMENTD_REDIS_PASSWORD", "", "Redis password (AUTH); empty: none"},
	{"SEGMENTD_PROFILE_TOPIC", "profile-events", "input topic"},
	{"SEGMENTD_MEMBERSHIP_TOPIC", "segment-membership", "output topic"},
	{"SEGMENTD_DLQ_TOPIC", "profile-events-dlq", "undecodable or invalid input"},
	{"SEGMENTD_GROUP_ID", "segmentd", "consumer group"},
	{"SEGMENTD_API_KEYS", "", "comma-separated orgId:key pairs (keys of 16+ characters); required unless embedded, where one dev key is printed at start"},
	{"SEGMENTD_BATCH_SIZE", "2000", "most profile events per processing batch"},
	{"SEGMENTD_BATCH_WAIT", "1ms", "how long a batch waits to fill (1µs-1s)"},
	{"SEGMENTD_USER_CACHE_MB", "128", "memory (MiB) the processor may take to keep users' states, ~600-700 bytes a user; 0: none"},
	{"SEGMENTD_ESTIMATE_INTERVAL", "1h", "how often estimatedSize is refreshed (1s-7 days)"},
	{"SEGMENTD_SHUTDOWN_TIMEOUT", "15s", "bound on the orderly shutdown (1s-1h)"},
	{"SEGMENTD_PARTITIONS", "12", "partitions of the topics segmentd creates when they are missing (4 in embedded mode, unless set)"},
	{"SEGMENTD_EMBEDDED_EPHEMERAL", "false", "true: the embedded Kafka and Redis listen on free ports instead of the fixed ones"},
}

// Error is a configuration error naming the variable at fault.
type Error struct {
	// Var is the variable at fault, and Value the value it was given.
	Var, Value string
	// Reason says what is wrong with the value.
	Reason string
	// Err, when not nil, is the error that showed it (a refused listen, an
	// unreachable broker): its text follows the reason.
	Err error
}

// Error says which variable is wrong, its value and why, in one line.
func (e *Error) Error() string {
	msg := fmt.Sprintf("config: %s=%q: %s", e.Var, e.Value, e.Reason)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the error that showed the value wrong, if any.
func (e *Error) Unwrap() error { return e.Err }

// Load reads and validates segmentd's configuration through getenv.
func Load(getenv func(string) string) (Config, error) { return load(getenv, true) }

// LoadClient reads the configuration as a client such as segmentctl needs
// it: the same variables, but no API keys are required.
func LoadClient(getenv func(string) string) (Config, error) { return load(getenv, false) }

func load(getenv func(string) string, daemon bool) (Config, error) {
	get := func(name string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		for _, v := range Vars {
			if v.Name == name {
				return v.Default
			}
		}
		return ""
	}
	var c Config
	var err error
	c.HTTPAddr = get("SEGMENTD_HTTP_ADDR")
	if _, port, e := net.SplitHostPort(c.HTTPAddr); e != nil {
		return c, &Error{Var: "SEGMENTD_HTTP_ADDR", Value: c.HTTPAddr, Reason: "want host:port"}
	} else if !validPort(port) {
		return c, &Error{Var: "SEGMENTD_HTTP_ADDR", Value: c.HTTPAddr, Reason: "want a port from 1 to 65535"}
	}
	if c.KafkaBrokers, err = addrList("SEGMENTD_KAFKA_BROKERS", get("SEGMENTD_KAFKA_BROKERS")); err != nil {
		return c, err
	}
	if c.RedisAddrs, err = addrList("SEGMENTD_REDIS_ADDRS", get("SEGMENTD_REDIS_ADDRS")); err != nil {
		return c, err
	}
	c.RedisUsername = get("SEGMENTD_REDIS_USERNAME")
	// Not trimmed: a password may begin or end with a space.
	c.RedisPassword = getenv("SEGMENTD_REDIS_PASSWORD")
	if c.RedisUsername != "" && c.RedisPassword == "" {
		return c, &Error{Var: "SEGMENTD_REDIS_USERNAME", Value: c.RedisUsername, Reason: "needs SEGMENTD_REDIS_PASSWORD"}
	}
	topicOf := map[string]string{} // topic name to the variable that gave it
	for _, t := range []struct {
		name string
		dst  *string
	}{
		{"SEGMENTD_PROFILE_TOPIC", &c.ProfileTopic},
		{"SEGMENTD_MEMBERSHIP_TOPIC", &c.MembershipTopic},
		{"SEGMENTD_DLQ_TOPIC", &c.DLQTopic},
	} {
		v := get(t.name)
		if !validTopic(v) {
			return c, &Error{Var: t.name, Value: v, Reason: "a topic name is 1-249 characters of [a-zA-Z0-9._-]"}
		}
		if other, ok := topicOf[v]; ok {
			return c, &Error{Var: t.name, Value: v, Reason: "the same topic as " + other + ": profile, membership and DLQ topics must differ"}
		}
		// Kafka refuses to create a topic whose name differs from another's
		// only by '.' against '_' (they collide in its metrics' names).
		if other, ok := topicOf[topicMetricName(v)]; ok {
			return c, &Error{Var: t.name, Value: v, Reason: "collides with the topic of " + other + ": Kafka takes '.' and '_' for the same character in topic names"}
		}
		topicOf[v] = t.name
		topicOf[topicMetricName(v)] = t.name
		*t.dst = v
	}
	c.GroupID = get("SEGMENTD_GROUP_ID")
	if c.APIKeys, err = apiKeys(get("SEGMENTD_API_KEYS")); err != nil {
		return c, err
	}
	if daemon && !c.Embedded() && len(c.APIKeys) == 0 {
		return c, &Error{Var: "SEGMENTD_API_KEYS", Value: "", Reason: "required when Kafka and Redis are external"}
	}
	if c.BatchSize, err = positiveInt("SEGMENTD_BATCH_SIZE", get("SEGMENTD_BATCH_SIZE"), 100000); err != nil {
		return c, err
	}
	if c.UserCacheMB, err = boundedInt("SEGMENTD_USER_CACHE_MB", get("SEGMENTD_USER_CACHE_MB"), 0, 1<<20); err != nil {
		return c, err
	}
	if c.Partitions, err = positiveInt("SEGMENTD_PARTITIONS", get("SEGMENTD_PARTITIONS"), 10000); err != nil {
		return c, err
	}
	v := get("SEGMENTD_EMBEDDED_EPHEMERAL")
	if c.EmbeddedEphemeral, err = strconv.ParseBool(v); err != nil {
		return c, &Error{Var: "SEGMENTD_EMBEDDED_EPHEMERAL", Value: v, Reason: "want true or false (or 1 or 0)"}
	}
	// Bounds that catch a unit mistyped (1h for 1ms): a batch that waits
	// seconds to fill holds every event that long.
	for _, d := range []struct {
		name     string
		dst      *time.Duration
		min, max time.Duration
		// want says the range as people write it, with examples in it.
		want string
	}{
		{"SEGMENTD_BATCH_WAIT", &c.BatchWait, time.Microsecond, time.Second, "from 1µs (1us) to 1s, such as 1ms or 5ms"},
		{"SEGMENTD_ESTIMATE_INTERVAL", &c.EstimateInterval, time.Second, 7 * 24 * time.Hour, "from 1s to 7 days (168h), such as 30s or 10m"},
		{"SEGMENTD_SHUTDOWN_TIMEOUT", &c.ShutdownTimeout, time.Second, time.Hour, "from 1s to 1h, such as 30s or 2m"},
	} {
		v := get(d.name)
		x, e := time.ParseDuration(v)
		if e != nil || x < d.min || x > d.max {
			return c, &Error{Var: d.name, Value: v, Reason: "want a duration " + d.want}
		}
		*d.dst = x
	}
	return c, nil
}

// topicMetricName is a topic's name as Kafka's metrics write it; it is
// not a valid topic name (the NUL), so it cannot meet one in topicOf.
func topicMetricName(topic string) string { return "\x00" + strings.ReplaceAll(topic, ".", "_") }

func addrList(name, v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	var out []string
	for _, a := range strings.Split(v, ",") {
		a = strings.TrimSpace(a)
		if strings.Contains(a, "@") {
			// A URL with credentials: they are not echoed.
			return nil, &Error{Var: name, Value: "<redacted>", Reason: "an address is host:port, without a scheme or credentials (Redis's go in SEGMENTD_REDIS_USERNAME and SEGMENTD_REDIS_PASSWORD)"}
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return nil, &Error{Var: name, Value: v, Reason: fmt.Sprintf("%q is not host:port", a)}
		}
		if !validPort(port) {
			return nil, &Error{Var: name, Value: v, Reason: fmt.Sprintf("%q has no valid port", a)}
		}
		out = append(out, a)
	}
	return out, nil
}

func validPort(port string) bool {
	p, err := strconv.Atoi(port)
	return err == nil && p >= 1 && p <= 65535
}

func apiKeys(v string) (map[string]string, error) {
	keys := map[string]string{}
	if v == "" {
		return keys, nil
	}
	for i, pair := range strings.Split(v, ",") {
		org, key, ok := strings.Cut(strings.TrimSpace(pair), ":")
		// Clients' keys are compared trimmed, so the configured ones are too.
		org, key = strings.TrimSpace(org), strings.TrimSpace(key)
		// The value holds secrets: name the pair by position, never echo it.
		if !ok || org == "" || key == "" {
			return nil, &Error{Var: "SEGMENTD_API_KEYS", Value: "<redacted>", Reason: fmt.Sprintf("pair %d is not orgId:key", i+1)}
		}
		if !ValidID(org) {
			// Not quoted: a pair written the wrong way round has its key there.
			return nil, &Error{Var: "SEGMENTD_API_KEYS", Value: "<redacted>", Reason: fmt.Sprintf("pair %d: its orgId (before the first colon) must be 1-100 characters of [a-zA-Z0-9_.-]", i+1)}
		}
		if !utf8.ValidString(key) {
			return nil, &Error{Var: "SEGMENTD_API_KEYS", Value: "<redacted>", Reason: fmt.Sprintf("pair %d: key is not valid UTF-8", i+1)}
		}
		// Characters, not bytes: a key of 8 two-byte characters is short.
		if utf8.RuneCountInString(key) < 16 {
			return nil, &Error{Var: "SEGMENTD_API_KEYS", Value: "<redacted>", Reason: fmt.Sprintf("pair %d: key must be at least 16 characters", i+1)}
		}
		// Printable: no control character, ASCII or not (U+0085), and no
		// line or paragraph separator (U+2028, U+2029).
		if strings.ContainsFunc(key, func(r rune) bool { return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' }) {
			return nil, &Error{Var: "SEGMENTD_API_KEYS", Value: "<redacted>", Reason: fmt.Sprintf("pair %d: key holds a control character (a line break? pairs are separated by commas)", i+1)}
		}
		// A colon in the key is most often the next pair, written after a
		// semicolon or a space instead of a comma: that organisation
		// would be left with no key.
		if strings.Contains(key, ":") {
			return nil, &Error{Var: "SEGMENTD_API_KEYS", Value: "<redacted>", Reason: fmt.Sprintf("pair %d: key holds a colon (another orgId:key after it? pairs are separated by commas)", i+1)}
		}
		if _, dup := keys[key]; dup {
			return nil, &Error{Var: "SEGMENTD_API_KEYS", Value: "<redacted>", Reason: fmt.Sprintf("pair %d: key used twice", i+1)}
		}
		keys[key] = org
	}
	return keys, nil
}

func positiveInt(name, v string, max int) (int, error) { return boundedInt(name, v, 1, max) }

func boundedInt(name, v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, &Error{Var: name, Value: v, Reason: fmt.Sprintf("want an integer from %d to %d", lo, hi)}
	}
	return n, nil
}

// ValidID reports whether s can be an organisation id: 1-100 characters of
// [a-zA-Z0-9_.-], so that it never breaks a Redis hash tag.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 100 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !idByte(s[i]) {
			return false
		}
	}
	return true
}

func validTopic(s string) bool {
	if len(s) == 0 || len(s) > 249 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !idByte(s[i]) {
			return false
		}
	}
	return true
}

func idByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}
