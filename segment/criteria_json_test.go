package segment

import "encoding/json"

// The fuzz test writes its criteria as JSON, the API's form (the API
// decodes requests with its own wire types: this is the tests' reader).

// criterionJSON is the JSON form of a Criterion; Value stays raw so that an
// absent value can be told from null.
type criterionJSON struct {
	// Field is the criterion's field path.
	Field string `json:"field"`
	// Operator is the criterion's operator.
	Operator string `json:"operator"`
	// Value is the criterion's value as JSON text, nil when the criterion has
	// none.
	Value json.RawMessage `json:"value,omitempty"`
}

// UnmarshalJSON decodes {"field","operator","value"}; HasValue is set when the
// "value" key is present, even when it holds null.
func (c *Criterion) UnmarshalJSON(data []byte) error {
	var w criterionJSON
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	*c = Criterion{Field: w.Field, Operator: w.Operator}
	if w.Value != nil {
		c.HasValue = true
		if err := json.Unmarshal(w.Value, &c.Value); err != nil {
			return err
		}
	}
	return nil
}
