// cnitool: ADD, CHECK and DEL through Debian's libcni (golang-github-appc-cni-dev), the library
// podman's CNI backend and cnitool use, so flowgate-cni is exercised by a client nobody here wrote.
//
// Usage: cnitool add|check|del CONFLIST NETNS CONTAINER_ID POD_NAMESPACE/POD_NAME PLUGIN_DIR CACHE_DIR
// Prints the result of ADD as JSON on stdout; on failure prints the CNI error and exits 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	if e, ok := err.(*types.Error); ok {
		b, _ := json.Marshal(e)
		fmt.Println(string(b))
	} else {
		b, _ := json.Marshal(map[string]string{"msg": err.Error()})
		fmt.Println(string(b))
	}
	os.Exit(1)
}

func main() {
	if len(os.Args) != 8 {
		fmt.Fprintln(os.Stderr, "usage: cnitool add|check|del CONFLIST NETNS CONTAINER_ID NS/NAME PLUGIN_DIR CACHE_DIR")
		os.Exit(2)
	}
	cmd, conflist, netns, id, pod, pluginDir, cacheDir := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6], os.Args[7]
	list, err := libcni.ConfListFromFile(conflist)
	if err != nil {
		fail(err)
	}
	ns, name, _ := strings.Cut(pod, "/")
	rt := &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      "eth0",
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}},
		CapabilityArgs: map[string]interface{}{
			"dns": map[string]interface{}{"searches": []string{"example.internal"}},
		},
	}
	// CNITOOL_HOSTPORT=HOST:CONTAINER adds a TCP port mapping (the portMappings capability).
	if hp := os.Getenv("CNITOOL_HOSTPORT"); hp != "" {
		var host, container int
		if _, err := fmt.Sscanf(hp, "%d:%d", &host, &container); err != nil {
			fail(err)
		}
		rt.CapabilityArgs["portMappings"] = []map[string]interface{}{{"hostPort": host, "containerPort": container, "protocol": "tcp"}}
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, cacheDir, nil)
	ctx := context.Background()
	switch cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", cmd)
		os.Exit(2)
	}
}
