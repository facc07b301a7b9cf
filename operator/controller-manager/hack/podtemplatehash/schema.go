package main

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"

	v1 "k8s.io/api/core/v1"
)

type field struct {
	Name   string `json:"name"`
	JSON   string `json:"json,omitempty"`
	Inline bool   `json:"inline,omitempty"`
	Type   string `json:"type"`
}

type typ struct {
	Display string  `json:"display"`
	Kind    string  `json:"kind"`
	Fields  []field `json:"fields,omitempty"`
	Elem    string  `json:"elem,omitempty"`
	Key     string  `json:"key,omitempty"`
}

var special = map[string]string{
	"k8s.io/apimachinery/pkg/api/resource.Quantity":        "quantity",
	"k8s.io/apimachinery/pkg/apis/meta/v1.Time":            "time",
	"k8s.io/apimachinery/pkg/util/intstr.IntOrString":      "intorstring",
	"k8s.io/apimachinery/pkg/apis/meta/v1.FieldsV1":        "opaque",
}

func id(t reflect.Type) string {
	if t.Name() != "" && t.PkgPath() != "" {
		return t.PkgPath() + "." + t.Name()
	}
	return t.String()
}

func walk(t reflect.Type, out map[string]*typ) string {
	k := id(t)
	if _, ok := out[k]; ok {
		return k
	}
	e := &typ{Display: t.String()}
	out[k] = e
	if s, ok := special[k]; ok {
		e.Kind = s
		return k
	}
	switch t.Kind() {
	case reflect.Struct:
		e.Kind = "struct"
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name := strings.Split(tag, ",")[0]
			fl := field{Name: f.Name, JSON: name, Inline: strings.Contains(tag, ",inline") || (f.Anonymous && name == "")}
			fl.Type = walk(f.Type, out)
			e.Fields = append(e.Fields, fl)
		}
	case reflect.Ptr:
		e.Kind = "ptr"
		e.Elem = walk(t.Elem(), out)
	case reflect.Slice:
		e.Kind = "slice"
		e.Elem = walk(t.Elem(), out)
	case reflect.Map:
		e.Kind = "map"
		e.Key = walk(t.Key(), out)
		e.Elem = walk(t.Elem(), out)
	case reflect.String:
		e.Kind = "string"
	case reflect.Bool:
		e.Kind = "bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		e.Kind = "int"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		e.Kind = "uint"
	case reflect.Float32, reflect.Float64:
		e.Kind = "float"
	default:
		panic("unsupported kind " + t.String())
	}
	return k
}

func schema() {
	out := map[string]*typ{}
	root := walk(reflect.TypeOf(v1.PodTemplateSpec{}), out)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	enc.Encode(map[string]interface{}{"root": root, "types": out})
}
