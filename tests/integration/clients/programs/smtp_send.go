// smtp_send: Go's net/smtp through the relay. Usage:
//   smtp_send MODE ADDR SERVERNAME CERT FROM TO MESSAGEFILE
// MODE plain: no TLS, PlainAuth (Go allows that only when SERVERNAME is localhost);
//      starttls: STARTTLS trusting CERT, then PlainAuth.
// Exit 3 with "refused: ..." when PlainAuth refuses before sending anything.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"strings"
)

func main() {
	mode, addr, name, certFile, from, to, msgFile := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6], os.Args[7]
	msg, err := os.ReadFile(msgFile)
	check(err)
	conn, err := net.Dial("tcp", addr)
	check(err)
	c, err := smtp.NewClient(conn, name)
	check(err)
	check(c.Hello("go-client"))
	if mode == "starttls" {
		pem, err := os.ReadFile(certFile)
		check(err)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		check(c.StartTLS(&tls.Config{ServerName: "localhost", RootCAs: pool}))
	}
	if err := c.Auth(smtp.PlainAuth("", os.Getenv("RELAY_USER"), os.Getenv("RELAY_PASSWORD"), name)); err != nil {
		if strings.Contains(err.Error(), "unencrypted") {
			fmt.Println("refused:", err)
			os.Exit(3)
		}
		check(err)
	}
	check(c.Mail(from))
	check(c.Rcpt(to))
	w, err := c.Data()
	check(err)
	_, err = w.Write(msg)
	check(err)
	check(w.Close())
	check(c.Quit())
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
