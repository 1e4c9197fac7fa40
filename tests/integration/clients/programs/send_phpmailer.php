<?php
// PHPMailer through the relay: php send_phpmailer.php PORT CERT FROM TO SUBJECT AUTHTYPE OUTFILE
// STARTTLS, trusting CERT; writes the MIME message PHPMailer built to OUTFILE (byte-exact check).
require '/usr/share/php/libphp-phpmailer/autoload.php';
use PHPMailer\PHPMailer\PHPMailer;
[$_, $port, $cert, $from, $to, $subject, $authType, $out] = $argv;
$mail = new PHPMailer(true);
$mail->isSMTP();
$mail->Host = '127.0.0.1';
$mail->Port = (int)$port;
$mail->SMTPAuth = true;
$mail->AuthType = $authType;
$mail->Username = getenv('RELAY_USER');
$mail->Password = getenv('RELAY_PASSWORD');
$mail->SMTPSecure = PHPMailer::ENCRYPTION_STARTTLS;
$mail->SMTPOptions = ['ssl' => ['cafile' => $cert, 'peer_name' => 'localhost']];
$mail->CharSet = 'UTF-8';
$mail->setFrom($from);
$mail->addAddress($to);
$mail->Subject = $subject;
$mail->Body = "hello from PHPMailer\r\n.leading dot\r\nna\u{ef}ve\r\n";
$mail->preSend();
file_put_contents($out, $mail->getSentMIMEMessage());
$mail->postSend();
