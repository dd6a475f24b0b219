// oci-registry serves go-containerregistry's registry with its OCI 1.1
// referrers API (`GET /v2/<name>/referrers/<digest>`) turned on, which
// `crane registry serve` leaves off and distribution 2.8 (the Debian
// docker-registry) does not have. The referrers tests of Lifeboat use it
// as the registry WITH the API, source and target alike.
//
// Usage: oci-registry -address 127.0.0.1:PORT [-blobs DIR]
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	address := flag.String("address", "127.0.0.1:0", "address to listen on")
	blobs := flag.String("blobs", "", "directory for blobs (default: in memory)")
	version := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *version || flag.Arg(0) == "version" {
		os.Stdout.WriteString("oci-registry (go-containerregistry pkg/registry, referrers API on)\n")
		return
	}
	options := []registry.Option{registry.WithReferrersSupport(true)}
	if *blobs != "" {
		options = append(options, registry.WithBlobHandler(registry.NewDiskBlobHandler(*blobs)))
	}
	listener, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatalln(err)
	}
	log.Printf("serving on %s", listener.Addr())
	server := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler:           registry.New(options...),
	}
	log.Fatalln(server.Serve(listener))
}
