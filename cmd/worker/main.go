// Command worker is dpsync's worker and operator tool.
package main

import (
	"fmt"
	"os"
)

func main() { os.Exit(run()) }

func run() int {
	fmt.Fprintln(os.Stderr, "dpsync worker: not built yet")
	return 1
}
