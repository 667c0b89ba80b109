"""The usage text of `fusezfs image` and `fusezfs container` (fusezfs/images/cli.py), here so that
the help of the whole command line lists them without importing the images front end."""

USAGE = {
    "image": "\timage import [-q] [-g graph] [-m mountpoint] [-t ref]... <dataset> "
             "[<archive> | -]\n"
             "\timage ls [-Hp] [-s store]\n"
             "\timage inspect [-s store] <image> ...\n"
             "\timage rm [-f] [-s store] <image> ...\n"
             "\timage export [-s store] <image> ... <archive>",
    "container": "\tcontainer create [-s store] <image> <name>\n"
                 "\tcontainer ls [-Hp] [-s store]\n"
                 "\tcontainer rm [-f] [-s store] <name> ...\n"
                 "\tcontainer commit [-m message] [-s store] <name> <image>[:tag]",
}
