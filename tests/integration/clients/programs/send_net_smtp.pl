# Perl Net::SMTP through the relay: perl send_net_smtp.pl PORT CERT FROM TO MESSAGEFILE MECHANISM
# STARTTLS trusting CERT, then AUTH with MECHANISM (Authen::SASL), then the raw message.
use strict;
use warnings;
use Net::SMTP;
use Authen::SASL;
my ($port, $cert, $from, $to, $file, $mech) = @ARGV;
my $smtp = Net::SMTP->new('127.0.0.1', Port => $port, Hello => 'perl-client', Timeout => 20, Debug => $ENV{NET_DEBUG} // 0)
    or die "connect: $@";
$smtp->starttls(SSL_ca_file => $cert, SSL_verifycn_name => 'localhost') or die 'starttls: ' . $smtp->message;
my $sasl = Authen::SASL->new(mechanism => $mech,
    callback => { user => $ENV{RELAY_USER}, pass => $ENV{RELAY_PASSWORD}, authname => $ENV{RELAY_USER} });
$smtp->auth($sasl) or die 'auth: ' . $smtp->code . ' ' . $smtp->message;
$smtp->mail($from) or die 'mail: ' . $smtp->message;
$smtp->to($to) or die 'rcpt: ' . $smtp->message;
my $data = do { open(my $fh, '<:raw', $file) or die "open: $!"; local $/; <$fh> };
$smtp->data() or die 'data: ' . $smtp->message;
$smtp->datasend($data);
$smtp->dataend() or die 'dataend: ' . $smtp->code . ' ' . $smtp->message;
$smtp->quit;
