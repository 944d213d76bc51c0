// Command etcd is the etcd server from the pinned go.etcd.io/etcd/server/v3 module.
// It exists only so the binary is named "etcd": building the module's own main package
// (go.etcd.io/etcd/server/v3) would name it "server".
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
