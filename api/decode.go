package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// decodeBody reads a request's body, at most MaxBodySize bytes, and
// decodes it as a T by decode's rules; every handler that takes a body
// reads it through here.
func decodeBody[T any](r *http.Request) (T, error) {
	body, err := readBody(r)
	if err != nil {
		var zero T
		return zero, err
	}
	return decode[T](body)
}

// readBody reads at most MaxBodySize bytes of the request body.
func readBody(r *http.Request) ([]byte, error) {
	if r.ContentLength > MaxBodySize {
		return nil, fmt.Errorf("request body of %d bytes exceeds the limit of %d bytes", r.ContentLength, MaxBodySize)
	}
	// One byte more than the limit tells a body at the limit from one
	// over it, when the client sent no (or a false) Content-Length.
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodySize+1))
	if err != nil {
		return nil, fmt.Errorf("reading request body: %w", err)
	}
	if len(body) > MaxBodySize {
		return nil, fmt.Errorf("request body exceeds the limit of %d bytes", MaxBodySize)
	}
	return body, nil
}

// decode parses one JSON value from data as a T, rejecting unknown
// fields, wrong types and trailing data with messages that name the field.
func decode[T any](data []byte) (T, error) {
	var v T
	if len(bytes.TrimSpace(data)) == 0 {
		return v, errors.New("empty request body")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return v, jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return v, errors.New("invalid JSON: unexpected data after the JSON value")
	}
	return v, nil
}

// jsonError rephrases encoding/json's errors for API clients.
func jsonError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Errorf("invalid JSON at byte %d: %v", syntax.Offset, syntax)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Errorf("invalid JSON: expected %s, got %s", jsonKind(typ.Type.Kind().String()), typ.Value)
		}
		return fmt.Errorf("field %q: expected %s, got %s", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("invalid JSON: unexpected end of input")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json has no typed error for this one.
		return fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return fmt.Errorf("invalid JSON: %v", err)
}

// jsonKind names a Go kind the way a JSON user thinks of it.
func jsonKind(k string) string {
	switch k {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "an array"
	}
	return k
}
