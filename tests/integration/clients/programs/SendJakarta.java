// Jakarta Mail through the relay: java SendJakarta PORT CERT FROM TO MESSAGEFILE MECHANISM
// STARTTLS required, trusting CERT; the parsed raw message goes out unchanged (no saveChanges).
import jakarta.mail.Address;
import jakarta.mail.Session;
import jakarta.mail.Transport;
import jakarta.mail.internet.InternetAddress;
import jakarta.mail.internet.MimeMessage;
import java.io.FileInputStream;
import java.util.Properties;

public class SendJakarta {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        p.put("mail.smtp.host", "127.0.0.1");
        p.put("mail.smtp.port", a[0]);
        p.put("mail.smtp.auth", "true");
        p.put("mail.smtp.starttls.enable", "true");
        p.put("mail.smtp.starttls.required", "true");
        p.put("mail.smtp.ssl.trust", "*");
        p.put("mail.smtp.ssl.checkserveridentity", "false");
        p.put("mail.smtp.auth.mechanisms", a[5]);
        p.put("mail.smtp.from", a[2]);
        Session session = Session.getInstance(p);
        MimeMessage msg;
        try (FileInputStream in = new FileInputStream(a[4])) {
            msg = new MimeMessage(session, in);
        }
        try (Transport t = session.getTransport("smtp")) {
            t.connect(System.getenv("RELAY_USER"), System.getenv("RELAY_PASSWORD"));
            t.sendMessage(msg, new Address[] {new InternetAddress(a[3])});
        }
    }
}
