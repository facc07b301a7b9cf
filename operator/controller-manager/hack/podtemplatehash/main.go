// Command podtemplatehash is upstream's pod-template-hash as a tool, for the deployment
// controller's tests and schema:
//
//	GOFLAGS=-mod=mod go run . testdata-t1.json [collisionCount]  # prints controller.ComputeHash
//	GOFLAGS=-mod=mod go run . schema > ../../src/controllers/deployment/podtemplatespec_v1_36.json
//
// (the schema file is checked in compacted: one line, sorted keys).
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/dump"
)

func main() {
	if os.Args[1] == "schema" {
		schema()
		return
	}
	var t v1.PodTemplateSpec
	data, _ := os.ReadFile(os.Args[1])
	if err := json.Unmarshal(data, &t); err != nil {
		panic(err)
	}
	h := fnv.New32a()
	s := dump.ForHash(t)
	fmt.Fprintf(h, "%v", s)
	if len(os.Args) > 2 {
		var c int32
		fmt.Sscan(os.Args[2], &c)
		b := make([]byte, 8)
		binary.LittleEndian.PutUint32(b, uint32(c))
		h.Write(b)
	}
	fmt.Fprintln(os.Stderr, s)
	fmt.Println(rand.SafeEncodeString(fmt.Sprint(h.Sum32())))
}
